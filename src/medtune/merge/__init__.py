"""Merge stage: fold a LoRA adapter into its base (`adapter`), and merge several models into one (`merge`, `methods`)."""
