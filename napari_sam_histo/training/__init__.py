"""Fine-tuning SAM for histopathology (Kim et al. 2023, §2.2): the scenarios md, ie_md, whole and
modified, trained with simulated clicks and the Normalized Focal Loss. No Qt here."""
