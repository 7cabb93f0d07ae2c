"""`python -m jobs ...` is the `spin` command line; Ray Jobs run `python -m jobs run CONFIG --iteration K`."""

from jobs.cli import main

main()
