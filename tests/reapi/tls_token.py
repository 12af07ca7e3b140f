"""Test material for tests/remote.rs: a CA and a server certificate for
127.0.0.1, and an HS256 JWT BuildGrid accepts. Runs with BuildGrid's own
venv python (it ships `cryptography` and `PyJWT`).

    python tls_token.py OUTDIR    writes ca.pem, server.key, server.pem,
                                  client.key, client.pem (a client
                                  certificate the CA signed, for mTLS),
                                  secret (the JWT key), token
"""

import datetime
import ipaddress
import os
import sys

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

out = sys.argv[1]
now = datetime.datetime.now(datetime.timezone.utc)
day = datetime.timedelta(days=1)


def key():
    return ec.generate_private_key(ec.SECP256R1())


def pem(k):
    return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption())


ca_key = key()
ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dagfs test CA")])
ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
      .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
      .not_valid_before(now - day).not_valid_after(now + day)
      .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
      .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                   content_commitment=False, key_encipherment=False,
                                   data_encipherment=False, key_agreement=False,
                                   encipher_only=False, decipher_only=False), critical=True)
      .sign(ca_key, hashes.SHA256()))
srv_key = key()
srv = (x509.CertificateBuilder()
       .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
       .issuer_name(ca_name).public_key(srv_key.public_key())
       .serial_number(x509.random_serial_number())
       .not_valid_before(now - day).not_valid_after(now + day)
       .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                   x509.DNSName("localhost")]), critical=False)
       .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
       .sign(ca_key, hashes.SHA256()))
cli_key = key()
cli = (x509.CertificateBuilder()
       .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dagfs test client")]))
       .issuer_name(ca_name).public_key(cli_key.public_key())
       .serial_number(x509.random_serial_number())
       .not_valid_before(now - day).not_valid_after(now + day)
       .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
       .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
       .sign(ca_key, hashes.SHA256()))
with open(os.path.join(out, "client.key"), "wb") as f:
    f.write(pem(cli_key))
with open(os.path.join(out, "client.pem"), "wb") as f:
    f.write(cli.public_bytes(serialization.Encoding.PEM))
with open(os.path.join(out, "ca.pem"), "wb") as f:
    f.write(ca.public_bytes(serialization.Encoding.PEM))
with open(os.path.join(out, "server.key"), "wb") as f:
    f.write(pem(srv_key))
with open(os.path.join(out, "server.pem"), "wb") as f:
    f.write(srv.public_bytes(serialization.Encoding.PEM))
secret = os.urandom(32).hex()
with open(os.path.join(out, "secret"), "w") as f:
    f.write(secret)
token = jwt.encode({"sub": "dagfs-test", "iat": now, "exp": now + day}, secret, algorithm="HS256")
with open(os.path.join(out, "token"), "w") as f:
    f.write(token + "\n")
