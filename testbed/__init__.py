"""The SOCP testbed: start federations, script clients, break things, check convergence and delivery.

It drives nodes only from outside (processes, containers, the wire) and never imports ``node``, so
it can judge any SOCP implementation that accepts the same command line.
"""
