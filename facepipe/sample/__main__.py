"""``python -m facepipe.sample [data_root]``: build the sample media (see facepipe.sample.build)."""

from facepipe.sample.build import main

main()
