#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: imprint developers
# SPDX-License-Identifier: Apache-2.0

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: server
short_description: Deploy and delete guests from imprint images
version_added: 0.1.0
description:
  - Makes sure a guest named O(name) exists on O(host), deploying it from
    O(image) when it does not.
  - A guest is looked for among your guests on the host (the daemon's
    C(GuestService.ListGuests)). One that exists is left as it is, whatever
    the task's image, sizes or network say; the module never redeploys,
    resizes or reconfigures a guest.
  - O(state=absent) deletes the guest through the daemon
    (C(GuestService.DeleteGuest)); it is forced off, the storage-pool
    volumes of its disks are deleted and it is undefined. Disks outside
    storage pools are left (the operation's C(delete_guest.left_disks)
    names them). A guest that does not exist (or is not yours) is C(ok).
author:
  - imprint developers (@imprint)
extends_documentation_fragment:
  - imprint.cloud.imprint
attributes:
  check_mode:
    support: full
    description: The image is resolved but nothing is deployed or deleted; C(changed) says whether it would be.
  diff_mode:
    support: full
    description: Shows the guest's absence before and what would be deployed after (for V(absent), the guest before and nothing after).
options:
  name:
    description: Guest (libvirt domain) name.
    type: str
    required: true
  host:
    description: Host, as registered with the daemon. Your account must be allowed to use it.
    type: str
    required: true
  state:
    description:
      - V(present) deploys the guest unless it exists.
      - V(absent) deletes the guest when it exists (see the description).
    type: str
    choices: [present, absent]
    default: present
  image:
    description:
      - Image to deploy, by name (among the images you can see; only
        active and deprecated ones count) or by id.
      - Required with O(state=present).
    type: str
  image_owner:
    description: Account whose images O(image) is looked up among, when other accounts use the same name.
    type: str
  pool:
    description: libvirt storage pool for the new volumes; the agent's default pool when unset.
    type: str
  profile:
    description: Hardware profile (flavor) over the image's configuration.
    type: str
  vcpus:
    description: vCPUs; the image's (or profile's) when unset.
    type: int
  memory_mib:
    description: Memory in MiB; the image's (or profile's) when unset.
    type: int
  disk_sizes:
    description:
      - Sizes of the new disks, in the image's disk order (bytes, or with a
        binary unit as for C(qemu-img), like V(40G) or V(512M)). Disks grow, never
        shrink; missing entries keep the image's size.
    type: list
    elements: raw
  network:
    description: Network configuration written into the guest (cloud-init seed).
    type: dict
    suboptions:
      hostname:
        description: Host name of the guest; its name when unset.
        type: str
      interfaces:
        description: One entry per NIC of the image, in order; NICs without one use DHCP.
        type: list
        elements: dict
        suboptions:
          addresses:
            description: Static addresses in CIDR form (V(192.0.2.10/24), V(2001:db8::10/64)); none means DHCP.
            type: list
            elements: str
          gateway4:
            description: IPv4 default gateway.
            type: str
          gateway6:
            description: IPv6 default gateway.
            type: str
          nameservers:
            description: DNS servers.
            type: list
            elements: str
          search_domains:
            description: DNS search domains.
            type: list
            elements: str
          mac_address:
            description: MAC of the new NIC; a fresh locally administered one when unset.
            type: str
          gateway_on_link:
            description: The gateway is on the link although outside the address's subnet.
            type: bool
            default: false
  user_data:
    description: cloud-init user-data for the new guest.
    type: str
  keep_identity:
    description:
      - Keep the image's identity (machine-id, SSH host keys...). By
        default the new disks are generalized before the first boot; images
        whose operating system cannot be read (no OS, encrypted) need
        V(true).
    type: bool
    default: false
  start:
    description: Start the guest once deployed.
    type: bool
    default: true
  lazy:
    description:
      - Start the guest at once, on volumes that fill while it runs (needs
        O(start) and a file-based pool).
      - V(false) writes every volume first. Unset, the daemon decides (by
        default lazy where it can be).
    type: bool
  wait:
    description: Wait until the deploy (or delete) has ended; with V(false) the task returns once it started.
    type: bool
    default: true
  wait_timeout:
    description: Seconds to wait; the operation goes on in the daemon after it.
    type: int
    default: 3600
'''

EXAMPLES = r'''
- name: Two web servers with static addresses
  imprint.cloud.server:
    name: "{{ item.name }}"
    host: kvm-01
    image: web-golden
    vcpus: 2
    memory_mib: 2048
    disk_sizes: [40G]
    network:
      interfaces:
        - addresses: ["{{ item.address }}"]
          gateway4: 192.0.2.1
          nameservers: [192.0.2.53]
  loop:
    - {name: web1, address: 192.0.2.11/24}
    - {name: web2, address: 192.0.2.12/24}

- name: Delete a guest and its volumes
  imprint.cloud.server:
    name: web-old
    host: kvm-01
    state: absent
'''

RETURN = r'''
server:
  description:
    - The guest, as C(imprint.v1.HostGuest) (host, name, uuid, power state,
      owner). Empty when it does not exist (check mode, O(state=absent),
      or a deploy not waited for that has not defined it yet).
  returned: always
  type: dict
  sample:
    host: kvm-01
    name: web1
    uuid: 1b4e28ba-2fa1-11d2-883f-0016d3cca427
    power_state: POWER_STATE_RUNNING
    owner: alice
image:
  description: Id of the image deployed.
  returned: when deployed
  type: str
operation:
  description:
    - The deploy operation (its C(deploy) result has the volumes and MACs),
      or the delete operation (its C(delete_guest) result has the volumes
      deleted and the disks left).
  returned: when deployed or deleted
  type: dict
'''

from ansible_collections.imprint.cloud.plugins.module_utils.imprint import (
    ImprintModule, image_state, parse_size,
)


def find_guest(m):
    p = m.params
    for g in m.call(m.client.list_guests, p['host']):
        if g.name == p['name']:
            return g
    return None


def resolve_image(m):
    """The id of the image to deploy."""
    p = m.params
    found = m.images_named(p['image'], p['image_owner'])
    usable = [i for i in found if image_state(i) in ('active', 'deprecated')]
    if usable:
        # The newest of the caller's images of that name.
        usable = m.one_owner(usable, p['image'], 'image_owner')
    if usable:
        return usable[0].id
    if found:
        m.module.fail_json(
            msg='FAILED_PRECONDITION: image %s cannot be deployed: it is %s'
                % (p['image'], image_state(found[0])),
            code='FAILED_PRECONDITION')
    # Not a name: an id, or nothing the daemon knows (it says NOT_FOUND).
    return m.call(m.client.get_image, p['image']).id


def network(p):
    """The network option as the client takes it, unset fields left out."""
    net = p['network']
    if not net:
        return None
    out = {}
    if net.get('hostname'):
        out['hostname'] = net['hostname']
    out['interfaces'] = [
        dict((k, v) for k, v in nic.items() if v not in (None, [], False))
        for nic in net.get('interfaces') or []
    ]
    return out


def disk_sizes(m):
    sizes = []
    for s in m.params['disk_sizes'] or []:
        n = parse_size(s)
        if n is None:
            m.module.fail_json(msg='INVALID_ARGUMENT: disk size %r is not a size (40G, 512M, bytes)' % (s,),
                               code='INVALID_ARGUMENT')
        sizes.append(n)
    return sizes


def present(m):
    p = m.params
    guest = find_guest(m)
    if guest is not None:
        server = m.to_dict(guest)
        m.exit(changed=False, server=server, diff=dict(before=server, after=server))
    sizes = disk_sizes(m)
    image_id = resolve_image(m)
    planned = dict(host=p['host'], name=p['name'], image=image_id)
    diff = dict(before={}, after=planned)
    if m.check_mode:
        m.exit(changed=True, server={}, image=image_id, diff=diff)
    op = m.call(m.client.deploy, image_id, p['host'], p['name'],
                pool=p['pool'] or '', vcpus=p['vcpus'] or 0, memory_mib=p['memory_mib'] or 0,
                disk_sizes_bytes=sizes, network=network(p), user_data=p['user_data'] or '',
                start=p['start'], profile=p['profile'] or '', lazy=p['lazy'],
                keep_identity=p['keep_identity'])
    if p['wait']:
        op = m.wait(op, p['wait_timeout'])
    guest = find_guest(m)
    m.exit(changed=True, server=m.to_dict(guest) or {}, image=image_id,
           operation=m.to_dict(op), diff=diff)


def absent(m):
    p = m.params
    guest = find_guest(m)
    if guest is None:
        m.exit(changed=False, server={}, diff=dict(before={}, after={}))
    diff = dict(before=m.to_dict(guest), after={})
    if m.check_mode:
        m.exit(changed=True, server={}, diff=diff)
    # By UUID: a guest made again under the name meanwhile is not hit.
    op = m.call(m.client.delete_guest, p['host'], guest.uuid)
    if p['wait']:
        op = m.wait(op, p['wait_timeout'])
    m.exit(changed=True, server={}, operation=m.to_dict(op), diff=diff)


def main():
    nic = dict(
        addresses=dict(type='list', elements='str'),
        gateway4=dict(type='str'),
        gateway6=dict(type='str'),
        nameservers=dict(type='list', elements='str'),
        search_domains=dict(type='list', elements='str'),
        mac_address=dict(type='str'),
        gateway_on_link=dict(type='bool', default=False),
    )
    m = ImprintModule(
        argument_spec=dict(
            name=dict(type='str', required=True),
            host=dict(type='str', required=True),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            image=dict(type='str'),
            image_owner=dict(type='str'),
            pool=dict(type='str'),
            profile=dict(type='str'),
            vcpus=dict(type='int'),
            memory_mib=dict(type='int'),
            disk_sizes=dict(type='list', elements='raw'),
            network=dict(type='dict', options=dict(
                hostname=dict(type='str'),
                interfaces=dict(type='list', elements='dict', options=nic),
            )),
            user_data=dict(type='str'),
            keep_identity=dict(type='bool', default=False),
            start=dict(type='bool', default=True),
            lazy=dict(type='bool'),
            wait=dict(type='bool', default=True),
            wait_timeout=dict(type='int', default=3600),
        ),
        required_if=[('state', 'present', ['image'])],
        supports_check_mode=True,
    )
    if m.params['state'] == 'present':
        present(m)
    else:
        absent(m)


if __name__ == '__main__':
    main()
