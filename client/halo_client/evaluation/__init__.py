"""Measuring what pruning keeps: conversations with planted facts, policies, measures, reports."""
