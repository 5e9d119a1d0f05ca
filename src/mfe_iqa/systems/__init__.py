"""LightningModules: DAN contrastive pre-training and multi-task IQA training."""
