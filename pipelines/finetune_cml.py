"""DVC stage `finetune_cml`: the job radclip.jobs.finetune_cml (its logic, outputs and effective params)."""

from radclip.jobs.finetune_cml import main

if __name__ == "__main__":
    main()
