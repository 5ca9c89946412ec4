#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: imprint developers
# SPDX-License-Identifier: Apache-2.0

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: host_info
short_description: List the hypervisor hosts of an imprint daemon
version_added: 0.1.0
description:
  - Lists the hosts whose agents registered with the daemon, whether they
    are alive (a heartbeat within the last 30 s), and optionally your
    guests on them.
author:
  - imprint developers (@imprint)
extends_documentation_fragment:
  - imprint.cloud.imprint
attributes:
  check_mode:
    support: full
    description: Reads only.
options:
  name:
    description: Only this host (an unknown name gives an empty list).
    type: str
  guests:
    description:
      - Add C(guests) to every alive host, the list of your guests there
        (for admins, every guest, with its owner). Hosts that are not alive
        get none.
    type: bool
    default: false
'''

EXAMPLES = r'''
- name: Hosts, and my guests on them
  imprint.cloud.host_info:
    guests: true
  register: fleet

- name: Names of the hosts that are alive
  ansible.builtin.debug:
    msg: "{{ fleet.hosts | selectattr('alive') | map(attribute='name') }}"
'''

RETURN = r'''
hosts:
  description: The hosts (fields as in the daemon's API, C(imprint.v1.Host)).
  returned: always
  type: list
  elements: dict
  sample:
    - name: kvm-01
      alive: true
      cpus: 32
      memory_bytes: 137438953472
      site: default
      guests:
        - {host: kvm-01, name: web1, power_state: POWER_STATE_RUNNING, owner: alice}
'''

from ansible_collections.imprint.cloud.plugins.module_utils.imprint import ImprintModule


def main():
    m = ImprintModule(
        argument_spec=dict(
            name=dict(type='str'),
            guests=dict(type='bool', default=False),
        ),
        supports_check_mode=True,
    )
    p = m.params
    hosts = []
    for h in m.call(m.client.list_hosts):
        if p['name'] and h.name != p['name']:
            continue
        d = m.to_dict(h)
        if p['guests'] and h.alive:
            d['guests'] = [m.to_dict(g) for g in m.call(m.client.list_guests, h.name)]
        hosts.append(d)
    m.exit(changed=False, hosts=hosts)


if __name__ == '__main__':
    main()
