"""cdcl2d"""
