"""From saved records to numbers: summary, statistics, lossless check, cross-run compare, published figures."""
