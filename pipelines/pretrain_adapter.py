"""DVC stage `pretrain_adapter`: the job radclip.jobs.pretrain_adapter (its logic, outputs and effective params)."""

from radclip.jobs.pretrain_adapter import main

if __name__ == "__main__":
    main()
