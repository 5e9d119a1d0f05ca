"""Loss functions (nn.Modules, no Lightning): contrastive pre-training and multi-task IQA."""
