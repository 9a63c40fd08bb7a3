"""Fine-tuning SAM for histopathology (Kim et al. 2023, §2.2) with simulated clicks and the
Normalized Focal Loss, project decoders, the training examples and re-clicks the online
adaptation shares, and the benchmarks that measure training. No Qt here."""
