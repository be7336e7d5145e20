#!/usr/bin/env bash
# TLS and SuperNode-authentication keys for a Flower deployment (docs/deploy.md).
#
#   bash scripts/make_certs.sh [OUT_DIR] [NUM_SUPERNODES] [EXTRA_SAN ...]
#
# OUT_DIR (default: certificates/) receives
#   ca.crt, ca.key                 a local certificate authority (give ca.crt to every SuperNode and to `flwr`)
#   server.pem, server.key         the SuperLink's certificate, signed by the CA, valid for localhost, 127.0.0.1,
#                                  ::1 and every EXTRA_SAN (e.g. IP:192.168.1.10 DNS:superlink.lab)
#   supernode_<i>, supernode_<i>.pub   one ECDSA P-384 key pair per SuperNode (OpenSSH format, as Flower reads
#                                  them); register each .pub with `flwr supernode register`.
# For real deployments use your organisation's CA; this script is for labs and tests.
set -euo pipefail
OUT="${1:-certificates}"
NODES="${2:-3}"
shift $(( $# > 2 ? 2 : $# )) || true
SAN="DNS:localhost,IP:127.0.0.1,IP:::1"
for extra in "$@"; do SAN="$SAN,$extra"; done
DAYS="${CERT_DAYS:-365}"
mkdir -p "$OUT"
cd "$OUT"

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key
openssl req -x509 -new -key ca.key -sha256 -days "$DAYS" -subj "/CN=edgefleet-local-ca" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.crt

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out server.key
openssl req -new -key server.key -subj "/CN=edgefleet-superlink" -out server.csr
printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' \
  "$SAN" > server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days "$DAYS" -sha256 \
  -extfile server.ext -out server.pem 2>/dev/null
rm -f server.csr server.ext ca.srl
chmod 600 ca.key server.key

ssh_key() {  # ECDSA P-384 in OpenSSH format: ssh-keygen, or Python's cryptography (a Flower dependency)
  if command -v ssh-keygen >/dev/null; then
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "edgefleet-supernode-$1" -f "supernode_$1"
  else
    "${PYTHON:-python3}" - "$1" <<'PY'
import sys
from pathlib import Path
from cryptography.hazmat.primitives import serialization as s
from cryptography.hazmat.primitives.asymmetric import ec
i = sys.argv[1]
key = ec.generate_private_key(ec.SECP384R1())
Path(f"supernode_{i}").write_bytes(key.private_bytes(s.Encoding.PEM, s.PrivateFormat.OpenSSH, s.NoEncryption()))
Path(f"supernode_{i}").chmod(0o600)
pub = key.public_key().public_bytes(s.Encoding.OpenSSH, s.PublicFormat.OpenSSH)
Path(f"supernode_{i}.pub").write_bytes(pub + f" edgefleet-supernode-{i}\n".encode())
PY
  fi
}
for i in $(seq 0 $(( NODES - 1 ))); do
  rm -f "supernode_$i" "supernode_$i.pub"
  ssh_key "$i"
done
echo "certificates and $NODES SuperNode key pairs in $(pwd) (SAN: $SAN)"
