"""runtimes/local"""
