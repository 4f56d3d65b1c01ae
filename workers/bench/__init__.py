"""`intake bench`: the fleet measured against baselines taken in the same run on the same machine."""
