"""DVC stage `curate`: the job radclip.jobs.curate (its logic, outputs and effective params)."""

from radclip.jobs.curate import main

if __name__ == "__main__":
    main()
