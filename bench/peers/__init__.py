"""Peer toolkits measured against ours, each run in its own process.

A peer that needs a different Keras (TFMOT needs legacy Keras 2, ``tf_keras``) lives in a
script of this package run with ``sys.executable -m bench.peers.NAME``; it writes its
results as JSON, which a case in ``bench/cases/`` reads. Importing this package imports
nothing heavy.
"""
