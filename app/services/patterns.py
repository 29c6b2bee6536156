"""Regular expressions the server enforces on strings, in one place: the request models publish them
in /openapi.json and the services apply the very same ones (so schema and server cannot disagree).

Python `re` and ECMA-262 (JSON Schema) read these identically: no look-behind, no named groups.
"""

from __future__ import annotations

import re

# Job and dataset ids are uuid4 strings; any other string names nothing (404, not 422).
UUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
# A built-in dataset name with options (digits, digits:test, fashion-mnist:test:pad32). Which built-ins
# a server has depends on what is installed there: an unknown one is a 404, like an unknown id.
BUILTIN = r"^[a-z0-9][a-z0-9-]{0,31}(:[a-z0-9-]{1,16}){0,3}$"
# A dataset under MEMAUDIT_DATA_ROOT: a file, a folder or a brace pattern of shards; relative, no '.' or
# '..' segment, no NUL. A path that names nothing is a 404; one that resolves outside the root is a 422.
DATA_PATH = r"^(?!/)(?!(.*/)?\.{1,2}(/|$))[^\x00]{1,1024}$"
# A TorchScript file under the data root (generators and feature extractors): same rules, any suffix.
TORCHSCRIPT_PATH = r"^(?!/)(?!(.*/)?\.\.(/|$))[^\x00]{1,1024}$"
# 0 .. 2^31 - 1 in decimal (sample ids are a 32-bit column), without a sign or leading zeros.
_INT31 = (r"(0|[1-9][0-9]{0,8}|1[0-9]{9}|20[0-9]{8}|21[0-3][0-9]{7}|214[0-6][0-9]{6}|2147[0-3][0-9]{5}"
          r"|21474[0-7][0-9]{4}|214748[0-2][0-9]{3}|2147483[0-5][0-9]{2}|21474836[0-3][0-9]|214748364[0-7])")
# A keyset position: the IEEE-754 bits of the last score (16 hex digits, 'n' for a non-finite score)
# and the last sample id. Every string of this shape is a valid position.
CURSOR = r"^(n|[0-9a-f]{16})\." + _INT31 + "$"
# http(s)://[user@]host[:port][/path][?query][#fragment], host a DNS name or an IP literal. Which
# hosts are allowed (not loopback, private, link-local...) is decided from their addresses.
_PORT = r"([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(\.{_OCTET}){{3}}"
_H16 = r"[0-9A-Fa-f]{1,4}"
_LS32 = rf"({_H16}:{_H16}|{_IPV4})"
_IPV6 = "(" + "|".join((  # RFC 3986, section 3.2.2
    rf"({_H16}:){{6}}{_LS32}",
    rf"::({_H16}:){{5}}{_LS32}",
    rf"({_H16})?::({_H16}:){{4}}{_LS32}",
    rf"(({_H16}:){{0,1}}{_H16})?::({_H16}:){{3}}{_LS32}",
    rf"(({_H16}:){{0,2}}{_H16})?::({_H16}:){{2}}{_LS32}",
    rf"(({_H16}:){{0,3}}{_H16})?::{_H16}:{_LS32}",
    rf"(({_H16}:){{0,4}}{_H16})?::{_LS32}",
    rf"(({_H16}:){{0,5}}{_H16})?::{_H16}",
    rf"(({_H16}:){{0,6}}{_H16})?::",
)) + ")"
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
WEBHOOK_URL = (r"^https?://([A-Za-z0-9._~%!$&'()*+,;=:-]*@)?"
               rf"({_LABEL}(\.{_LABEL})*|\[{_IPV6}\])"
               r"(:" + _PORT + r")?([/?#][\x21-\x7e]*)?$")


def matches(pattern: str, value: str) -> bool:
    return re.fullmatch(pattern.removeprefix("^").removesuffix("$"), value) is not None
