"""Evaluation of trained reward models: seen/unseen accuracy, adaptation, expert usage."""

from copl_ray.eval.metrics import accuracy_summary, allocation_matrix, expert_usage

__all__ = ["accuracy_summary", "allocation_matrix", "expert_usage"]
