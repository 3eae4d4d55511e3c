from .cohort import main

main()
