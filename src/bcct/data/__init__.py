"""Data: image loading, the CUB-200-2011 reader, the Background Image Set, transforms and the synthetic set."""
