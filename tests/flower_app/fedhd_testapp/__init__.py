"""fedhd_testapp: the Flower app of the end-to-end tests of ``strategies``."""
