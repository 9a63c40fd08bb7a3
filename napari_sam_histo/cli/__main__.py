"""``python -m napari_sam_histo.cli``: the ``napari-sam-histo`` command."""

import sys

from . import main

sys.exit(main())
