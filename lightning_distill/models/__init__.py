"""Encoders (frames -> video representation) and classifier heads (representation -> class probabilities)."""
