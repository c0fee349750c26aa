from alianza_jobs.cli import main

main()
