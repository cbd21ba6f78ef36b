"""The segmentation service: filters over customers and their events, and saved segments."""
