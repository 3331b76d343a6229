import sys
# EXPERIMENT: no TLS support -> pyOpenSSL/cryptography never load
sys.modules["OpenSSL"] = None
