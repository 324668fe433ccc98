"""cdcl3d"""
