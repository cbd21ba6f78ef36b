"""The filter language of segmentation.proto, shared by segmentation and campaigns.

``filters`` checks a ``Filter`` (and a campaign trigger's context predicates) into a
typed tree, with the language's limits; ``periods`` resolves periods and day
arithmetic against a ``now`` and a time zone; ``evaluation`` evaluates in Python:
predicates on one event's context (campaign triggers) and a tree from what was
seen of one customer (MatchCustomer). Compiling a tree to SQL stays in segmentation.
"""
