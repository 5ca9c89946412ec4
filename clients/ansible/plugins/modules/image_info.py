#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: imprint developers
# SPDX-License-Identifier: Apache-2.0

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: image_info
short_description: List the imprint images you can see
version_added: 0.1.0
description:
  - Lists images of the imprint daemon visible to your account (yours, the
    ones shared with you that you accepted, public ones), or one by id.
  - Filters combine. An image not found is not an error, the list is empty.
author:
  - imprint developers (@imprint)
extends_documentation_fragment:
  - imprint.cloud.imprint
attributes:
  check_mode:
    support: full
    description: Reads only.
options:
  id:
    description: One image by id (the other filters are ignored).
    type: str
  name:
    description: Images named exactly this.
    type: str
  owner:
    description: Images of this account.
    type: str
  tag:
    description: Images with this tag.
    type: str
  visibility:
    description: Images with this visibility.
    type: str
    choices: [private, shared, public]
  state:
    description:
      - Images in this state. Unset lists every state but V(deprecated) and
        V(deleted), like the daemon's listing.
    type: str
    choices: [creating, active, failed, deprecated, deleting]
'''

EXAMPLES = r'''
- name: My active web images
  imprint.cloud.image_info:
    owner: alice
    tag: web
    state: active
  register: web

- name: Their ids
  ansible.builtin.debug:
    msg: "{{ web.images | map(attribute='id') }}"
'''

RETURN = r'''
images:
  description: The images (fields as in the daemon's API, C(imprint.v1.Image)), newest first.
  returned: always
  type: list
  elements: dict
'''

from ansible_collections.imprint.cloud.plugins.module_utils.imprint import (
    ImprintModule,
)


def main():
    m = ImprintModule(
        argument_spec=dict(
            id=dict(type='str'),
            name=dict(type='str'),
            owner=dict(type='str'),
            tag=dict(type='str'),
            visibility=dict(type='str', choices=['private', 'shared', 'public']),
            state=dict(type='str',
                       choices=['creating', 'active', 'failed', 'deprecated', 'deleting']),
        ),
        supports_check_mode=True,
    )
    p = m.params
    if p['id']:
        img = m.get_image_or_none(p['id'])
        m.exit(changed=False, images=[m.to_dict(img)] if img is not None else [])
    images = m.call(m.client.list_images, owner=p['owner'] or '', name_prefix=p['name'] or '',
                    tag=p['tag'] or '', visibility=p['visibility'], state=p['state'])
    if p['name']:
        images = [i for i in images if i.name == p['name']]
    m.exit(changed=False, images=[m.to_dict(i) for i in images])


if __name__ == '__main__':
    main()
