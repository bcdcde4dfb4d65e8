"""Merge stage: fold adapters into their base (and, later, merge several models into one)."""
