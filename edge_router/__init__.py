"""The edge router: the edge's front door (expert choice, offload decision, discovery)."""
