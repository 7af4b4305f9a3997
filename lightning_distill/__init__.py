"""vdistill: efficient video classification with fewer frames (teacher-student distillation on YouTube-8M)."""

__version__ = "0.1.0"
