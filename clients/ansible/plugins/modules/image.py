#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: imprint developers
# SPDX-License-Identifier: Apache-2.0

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: image
short_description: Capture, update, share, publish and delete imprint images
version_added: 0.1.0
description:
  - Makes sure an image of the imprint daemon exists (capturing a guest
    when it does not) or does not exist.
  - An image is found by O(id), or by O(name) among the images you can see
    (only those of O(owner) when set). Failed, deleting and deleted images
    do not count, so a name whose last capture failed is captured again.
  - With O(state=present), an image that exists is never captured again;
    only its notes, tags, recommended profiles, minimums, shares and public
    visibility are brought to what the task says (options left out are
    left as they are). To take a fresh image of a guest, use a new name.
author:
  - imprint developers (@imprint)
extends_documentation_fragment:
  - imprint.cloud.imprint
attributes:
  check_mode:
    support: full
    description: Nothing is captured, changed or deleted; C(changed) says what would be.
  diff_mode:
    support: full
    description: Shows the image's name, notes, tags, shares and visibility before and after.
options:
  state:
    description:
      - V(present) captures the image when no image has the name, and
        otherwise converges the existing one.
      - V(absent) deletes the image named by O(id), or every image named
        O(name) you can see (of O(owner) when set).
    type: str
    choices: [present, absent]
    default: present
  name:
    description:
      - Image name. With O(id) as well, the image is renamed to it.
      - One of O(name) and O(id) is required.
    type: str
  id:
    description:
      - Image id. O(state=present) with an id never captures; an unknown
        id fails with C(NOT_FOUND).
    type: str
  owner:
    description:
      - Account whose images O(name) is looked up among. Set it (to your
        own account) when other accounts share or publish images of the
        same name.
    type: str
  host:
    description:
      - Host (as registered with the daemon) of the guest to capture.
      - Needed, with O(guest), when the image does not exist yet.
    type: str
  guest:
    description:
      - Domain name or UUID of the guest to capture, on O(host). You must
        own it (an admin assigns guests made outside imprint).
    type: str
  capture_mode:
    description:
      - V(offline) shuts the guest down (ACPI) for the moment the disks'
        point-in-time view is taken and starts it again.
      - V(live) freezes the guest's filesystems through qemu-guest-agent
        instead (no shutdown).
      - V(crash_consistent) neither shuts down nor freezes.
    type: str
    choices: [offline, live, crash_consistent]
    default: offline
  exclude_disks:
    description: Guest disks (V(vdb)) not to capture.
    type: list
    elements: str
    default: []
  shutdown_timeout:
    description:
      - Seconds to wait for the guest to shut down in V(offline) mode;
        V(0) is the daemon's default.
    type: int
    default: 0
  allow_force_off:
    description: Power the guest off when it does not shut down in time.
    type: bool
    default: false
  seal:
    description:
      - Store the image generalized (virt-sysprep's operations on what is
        read; the guest itself is untouched), so every deploy starts
        without the source's machine-id, SSH host keys and cloud-init
        state and skips its own generalization. Used only when the image
        is captured.
    type: bool
    default: false
  notes:
    description: Free text kept with the image.
    type: str
  tags:
    description: The image's tags (the whole set; order does not matter).
    type: list
    elements: str
  shared_with:
    description:
      - Accounts the image is shared with (the whole set; accounts not
        listed are unshared). They see it once they accept.
    type: list
    elements: str
  public:
    description:
      - V(true) publishes the image to every account (your account must be
        allowed to publish), V(false) makes it private again.
    type: bool
  force_publish:
    description:
      - Publish even when the image's last lint found errors (the daemon
        refuses with C(FAILED_PRECONDITION) otherwise).
    type: bool
    default: false
  recommended_profiles:
    description: Hardware profiles recommended for deploys of the image.
    type: list
    elements: str
  min_vcpus:
    description: Deploys with fewer vCPUs are refused.
    type: int
  min_memory_mib:
    description: Deploys with less memory (MiB) are refused.
    type: int
  wait:
    description:
      - Wait until a capture has ended (and apply shares and visibility
        then). With V(false) the task returns once the capture started.
      - An image still being created from an earlier run is waited for too.
    type: bool
    default: true
  wait_timeout:
    description:
      - Seconds to wait. The operation goes on in the daemon after it; a
        later run finds the image and waits again.
    type: int
    default: 3600
'''

EXAMPLES = r'''
- name: Capture web1 as web-golden, tagged, and share it with the db team
  imprint.cloud.image:
    name: web-golden
    host: kvm-01
    guest: web1
    shutdown_timeout: 300
    tags: [web, golden]
    notes: Debian 12 with nginx
    shared_with: [team-db]

- name: Publish it to every account
  imprint.cloud.image:
    name: web-golden
    owner: alice
    public: true

- name: Delete it
  imprint.cloud.image:
    name: web-golden
    state: absent
'''

RETURN = r'''
image:
  description:
    - The image after the task (its fields as in the daemon's API,
      C(imprint.v1.Image)). With O(state=absent), the deleted image when
      there was exactly one.
    - Empty in check mode when the image would be captured.
  returned: always
  type: dict
  sample:
    id: 6b1f0e0a-3f7e-4d55-9a53-1f2c1a4e9b10
    name: web-golden
    owner: alice
    state: IMAGE_STATE_ACTIVE
    tags: [web]
operation:
  description: The capture operation, when the task started one.
  returned: when captured
  type: dict
deleted:
  description: Ids of the images deleted (or, in check mode, to delete).
  returned: when O(state=absent)
  type: list
  elements: str
'''

from ansible_collections.imprint.cloud.plugins.module_utils.imprint import (
    ImprintModule, image_state, is_public,
)

# What `changed` and the diff compare, in the order the diff shows them.
FIELDS = ('name', 'notes', 'tags', 'recommended_profiles', 'min_vcpus', 'min_memory_mib',
          'shared_with', 'public')
SET_FIELDS = ('tags', 'recommended_profiles', 'shared_with')
UPDATE_FIELDS = ('name', 'notes', 'tags', 'recommended_profiles', 'min_vcpus', 'min_memory_mib')


def view(img):
    """The image as the options describe it."""
    return dict(
        name=img.name,
        notes=img.notes,
        tags=sorted(img.tags),
        recommended_profiles=sorted(img.recommended_profiles),
        min_vcpus=img.min_vcpus,
        min_memory_mib=img.min_memory_mib,
        shared_with=sorted(m.account for m in img.members),
        public=is_public(img),
    )


def wanted(params, current):
    """`current` with the options the task sets."""
    after = dict(current)
    for f in FIELDS:
        value = params.get(f)
        if value is None or (f == 'name' and not params['id']):
            continue
        after[f] = sorted(set(value)) if f in SET_FIELDS else value
    return after


def converge(m, img):
    """Bring an existing image to the task's options; (changed, image,
    before, after) with before/after as the diff shows them."""
    before = view(img)
    after = wanted(m.params, before)
    if before == after or m.check_mode:
        return before != after, img, before, after
    c = m.client
    updates = dict((f, after[f]) for f in UPDATE_FIELDS if before[f] != after[f])
    if updates:
        m.call(c.update_image, img.id, **updates)
    add = sorted(set(after['shared_with']) - set(before['shared_with']))
    remove = sorted(set(before['shared_with']) - set(after['shared_with']))
    if add:
        m.call(c.share_image, img.id, add)
    if remove:
        m.call(c.unshare_image, img.id, remove)
    if after['public'] and not before['public']:
        m.call(c.publish_image, img.id, force=m.params['force_publish'])
    elif before['public'] and not after['public']:
        m.call(c.unpublish_image, img.id)
    return True, m.call(c.get_image, img.id), before, after


def capture(m):
    p = m.params
    if not (p['host'] and p['guest']):
        m.module.fail_json(
            msg='NOT_FOUND: no image named %s%s exists; give host and guest to capture one'
                % (p['name'], ' of %s' % p['owner'] if p['owner'] else ''),
            code='NOT_FOUND')
    planned = wanted(p, dict(name=p['name'], notes='', tags=[], recommended_profiles=[],
                             min_vcpus=0, min_memory_mib=0, shared_with=[], public=False))
    planned['name'] = p['name']
    diff = dict(before={}, after=dict(planned, source_host=p['host'], source_guest=p['guest']))
    if m.check_mode:
        m.exit(changed=True, image={}, diff=diff)
    op = m.call(m.client.capture, p['host'], p['guest'], p['name'],
                notes=p['notes'] or '', tags=p['tags'] or (),
                exclude_disks=p['exclude_disks'], mode=p['capture_mode'],
                shutdown_timeout_seconds=p['shutdown_timeout'],
                allow_force_off=p['allow_force_off'], seal=p['seal'])
    if not p['wait']:
        img = m.get_image_or_none(op.image_id) if op.image_id else None
        result = dict(changed=True, image=m.to_dict(img) or {}, operation=m.to_dict(op), diff=diff)
        if p['shared_with'] or p['public'] or p['recommended_profiles'] or p['min_vcpus'] \
                or p['min_memory_mib']:
            m.module.warn('the capture was not waited for: shares, visibility, profiles and '
                          'minimums are applied by a later run once it has ended')
        m.exit(**result)
    final = m.wait(op, p['wait_timeout'])
    image_id = final.capture.image_id or final.image_id
    img = m.call(m.client.get_image, image_id)
    img = converge(m, img)[1]
    m.exit(changed=True, image=m.to_dict(img), operation=m.to_dict(final), diff=diff)


def present(m):
    p = m.params
    if p['id']:
        img = m.call(m.client.get_image, p['id'])
    else:
        found = m.live_images_named(p['name'], p['owner'])
        if not found:
            return capture(m)
        # The newest of the caller's images of that name.
        found = m.one_owner(found, p['name'], 'owner')
        img = found[0]
    if image_state(img) == 'creating' and p['wait'] and not m.check_mode:
        img = m.wait_while_creating(img, p['wait_timeout'])
    if image_state(img) == 'failed':
        m.module.fail_json(
            msg='FAILED_PRECONDITION: the capture of image %s (%s) failed: %s'
                % (img.name, img.id, img.failure_reason),
            code='FAILED_PRECONDITION', image=m.to_dict(img))
    changed, img, before, after = converge(m, img)
    m.exit(changed=changed, image=m.to_dict(img), diff=dict(before=before, after=after))


def absent(m):
    p = m.params
    if p['id']:
        img = m.get_image_or_none(p['id'])
        doomed = [img] if img is not None and image_state(img) not in ('deleting', 'deleted') else []
    else:
        doomed = [i for i in m.images_named(p['name'], p['owner'])
                  if image_state(i) not in ('deleting', 'deleted')]
        doomed = m.one_owner(doomed, p['name'], 'owner') if doomed else []
    diff = dict(before=dict(images=sorted(i.id for i in doomed)), after=dict(images=[]))
    last = m.to_dict(doomed[0]) if len(doomed) == 1 else {}
    if not doomed or m.check_mode:
        m.exit(changed=bool(doomed), image=last, deleted=[i.id for i in doomed], diff=diff)
    for img in doomed:
        m.wait(m.call(m.client.delete_image, img.id), p['wait_timeout'])
    m.exit(changed=True, image=last, deleted=[i.id for i in doomed], diff=diff)


def main():
    m = ImprintModule(
        argument_spec=dict(
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            name=dict(type='str'),
            id=dict(type='str'),
            owner=dict(type='str'),
            host=dict(type='str'),
            guest=dict(type='str'),
            capture_mode=dict(type='str', choices=['offline', 'live', 'crash_consistent'],
                              default='offline'),
            exclude_disks=dict(type='list', elements='str', default=[]),
            shutdown_timeout=dict(type='int', default=0),
            allow_force_off=dict(type='bool', default=False),
            seal=dict(type='bool', default=False),
            notes=dict(type='str'),
            tags=dict(type='list', elements='str'),
            shared_with=dict(type='list', elements='str'),
            public=dict(type='bool'),
            force_publish=dict(type='bool', default=False),
            recommended_profiles=dict(type='list', elements='str'),
            min_vcpus=dict(type='int'),
            min_memory_mib=dict(type='int'),
            wait=dict(type='bool', default=True),
            wait_timeout=dict(type='int', default=3600),
        ),
        required_one_of=[('name', 'id')],
        required_together=[('host', 'guest')],
        supports_check_mode=True,
    )
    if m.params['state'] == 'present':
        present(m)
    else:
        absent(m)


if __name__ == '__main__':
    main()
