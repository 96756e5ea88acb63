"""DVC stage `pretrain_adapter`: runs `radclip pretrain-adapter` (logic in the radclip library)."""

from radclip.cli import run_stage

if __name__ == "__main__":
    run_stage("pretrain_adapter")
