"""Optimisers and learning-rate schedules (below methods: a method may own an optimiser group)."""
