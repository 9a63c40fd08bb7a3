"""Fine-tuning SAM for histopathology (Kim et al. 2023, §2.2) with simulated clicks and the
Normalized Focal Loss, online adaptation to the slide being annotated, project decoders, and the
benchmarks that measure them. No Qt here."""
