"""Training stage: turns prepared data and a starting model into a fine-tuned model."""
