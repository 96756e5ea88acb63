"""DVC stage `embed_slices`: runs `radclip embed-slices` (logic in the radclip library)."""

from radclip.cli import run_stage

if __name__ == "__main__":
    run_stage("embed_slices")
