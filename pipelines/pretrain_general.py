"""DVC stage `pretrain_general`: the job radclip.jobs.pretrain_general (its logic, outputs and effective params)."""

from radclip.jobs.pretrain_general import main

if __name__ == "__main__":
    main()
