"""Clustering: nodes serving one domain share a replicated session directory and route in one hop.

``link.py`` is the node-to-node stream, ``directory.py`` the replicated map of sessions on other
nodes, ``node.py`` the membership, failure handling and event wiring. See docs/clustering.rst.
"""
