#!/bin/sh
# A stand-in for the public data portal's API, serving the files in ../data.
#   public_api.sh markets               -> market code, name
#   public_api.sh short-codes MARKET    -> one short code per line
#   public_api.sh details SHORT_CODE    -> code, name, issuer, issue date
# Set PUBLIC_API_FAILURES=N to make the first N tries of a task fail, as the real
# portal does on a bad day (the try number comes from UPDRAFT_TRY_NUMBER).
set -eu
here=$(dirname "$0")
data="$here/../data"
if [ "${UPDRAFT_TRY_NUMBER:-1}" -le "${PUBLIC_API_FAILURES:-0}" ]; then
  echo "public API: 503 Service Unavailable (try ${UPDRAFT_TRY_NUMBER})" >&2
  exit 1
fi
case "${1:-}" in
  markets) cat "$data/markets.tsv" ;;
  short-codes) awk -F'\t' -v market="$2" '$1 == market { print $2 }' "$data/listings.tsv" ;;
  details) awk -F'\t' -v code="$2" '$2 == code { print $2 "\t" $3 "\t" $4 "\t" $5 }' "$data/listings.tsv" ;;
  *) echo "usage: $0 markets | short-codes MARKET | details SHORT_CODE" >&2; exit 2 ;;
esac
