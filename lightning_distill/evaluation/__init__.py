"""Evaluation: YouTube-8M metrics (``metrics``), the ranking they share with prediction files (``ranking``),
Kaggle prediction files (``predictions``), model cost (``flops``) and metric reports (``report``)."""
