"""Models: which SAM networks exist, where their weights come from, and our decoders."""
