"""DVC stage `init_model`: the job radclip.jobs.init_model (its logic, outputs and effective params)."""

from radclip.jobs.init_model import main

if __name__ == "__main__":
    main()
