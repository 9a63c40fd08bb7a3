"""The shipped decoders say what tissue they were trained on: in their checkpoint and in the picker."""

import pytest

from napari_sam_histo.models.shipped import (
    SHIPPED_TRAINING,
    decoder_note,
    decoder_tissue,
    shipped_decoder_path,
    shipped_decoders,
)
from napari_sam_histo.models.state_dict import read_checkpoint


@pytest.mark.parametrize("kind", [k for k in shipped_decoders("vit_t") if k != "sam"])
def test_every_shipped_decoder_names_its_tissue_and_data_in_its_metadata(kind):
    metadata = read_checkpoint(shipped_decoder_path("vit_t", kind))["metadata"]
    assert (metadata["tissue"], metadata["training_data"]) == SHIPPED_TRAINING[kind]


def test_the_picker_text_says_what_each_decoder_is_for():
    assert "any tissue" in decoder_tissue("sam") and "not trained on histology" in decoder_note("sam")
    for kind, (tissue, data) in SHIPPED_TRAINING.items():
        assert tissue in decoder_tissue(kind) and data in decoder_note(kind)
    assert "metadata" in decoder_tissue("/data/my-decoder.pt")
