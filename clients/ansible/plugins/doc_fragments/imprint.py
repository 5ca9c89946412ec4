# -*- coding: utf-8 -*-
# Copyright: imprint developers
# SPDX-License-Identifier: Apache-2.0

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class ModuleDocFragment(object):
    """How every imprint module reaches the daemon."""

    DOCUMENTATION = r'''
options:
  endpoint:
    description:
      - URL of the imprint daemon (C(imprintd)), C(http://HOST:PORT) or
        C(https://HOST:PORT).
      - Taken from the E(IMPRINT_ENDPOINT) environment variable when not
        set, like the C(imprint) command line; C(http://127.0.0.1:7340)
        when neither is.
    type: str
  token:
    description:
      - API token of the account the module acts as (from
        C(imprintd account create)).
      - Taken from the E(IMPRINT_TOKEN) environment variable when not set.
    type: str
  ca_file:
    description:
      - PEM file of the CA that signed the daemon's certificate, for an
        C(https://) endpoint.
      - Taken from the E(IMPRINT_CA) environment variable when not set.
    type: path
requirements:
  - python >= 3.9
  - imprint_client (the Python client, C(clients/python) in the imprint
    source tree) on the host that runs the module
notes:
  - The modules talk to the daemon's API, not to the hypervisor hosts; run
    them on the control node (C(hosts=localhost), C(connection=local)) or
    on any machine that reaches the daemon.
  - "A call the daemon refuses fails the task with the gRPC status code
    first in C(msg), for example C(NOT_FOUND: image ... not found)."
'''
