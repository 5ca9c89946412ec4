# -*- coding: utf-8 -*-
# Copyright: imprint developers
# SPDX-License-Identifier: Apache-2.0
"""What every imprint module shares: the connection options, the client,
errors reported with their gRPC code, and image lookups by name."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import re
import time
import traceback

from ansible.module_utils.basic import AnsibleModule, env_fallback, missing_required_lib

try:
    from imprint_client import Client, ImprintError, pb
    HAS_IMPRINT = True
    IMPRINT_IMPORT_ERROR = None
except ImportError:
    HAS_IMPRINT = False
    IMPRINT_IMPORT_ERROR = traceback.format_exc()
    Client = pb = None

    class ImprintError(Exception):
        """Stands in for the client's error while it is not installed."""


CLIENT_URL = 'https://example.invalid/imprint/src/branch/main/clients/python'

# Images in these states are history, not the image a name stands for: a
# failed capture is captured again, a deleted one does not exist.
GONE_STATES = ('failed', 'deleting', 'deleted')


def connection_argument_spec():
    """The options of the imprint.cloud.imprint doc fragment."""
    return dict(
        endpoint=dict(type='str', fallback=(env_fallback, ['IMPRINT_ENDPOINT'])),
        token=dict(type='str', no_log=True, fallback=(env_fallback, ['IMPRINT_TOKEN'])),
        ca_file=dict(type='path', fallback=(env_fallback, ['IMPRINT_CA'])),
    )


def enum_name(enum_type, value):
    """`IMAGE_STATE_ACTIVE` as `active`: the names the CLI prints."""
    for module in (pb.images_pb2, pb.operations_pb2, pb.agent_pb2):
        enum = getattr(module, enum_type, None)
        if enum is not None:
            full = enum.Name(value)
            prefix = re.sub(r'(?<!^)(?=[A-Z])', '_', enum_type).upper() + '_'
            return full[len(prefix):].lower() if full.startswith(prefix) else full.lower()
    raise KeyError(enum_type)


def image_state(img):
    return enum_name('ImageState', img.state)


def provably_own(img):
    """Only the owner sees a private image, or an image's share members."""
    return enum_name('Visibility', img.visibility) == 'private' or len(img.members) > 0


def is_public(img):
    return enum_name('Visibility', img.visibility) == 'public'


def error_code(err):
    """The gRPC code name of a client error (`NOT_FOUND`)."""
    code = getattr(err, 'code', None)
    return getattr(code, 'name', str(code))


def parse_size(value):
    """Bytes from an int or a size with a binary unit like qemu-img's
    (`40G` = 40 GiB, `512M`, `512MiB`, `1.5T`); None when not one."""
    if isinstance(value, int):
        return value if value >= 0 else None
    m = re.match(r'^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtTpP]?)(?:i?[bB])?\s*$', str(value))
    if not m:
        return None
    power = ' KMGTP'.index(m.group(2).upper() or ' ')
    return int(float(m.group(1)) * (1024 ** power))


class ImprintModule(object):
    """An AnsibleModule with the connection options and a connected
    client; `call` runs a client call and fails the task, with the gRPC
    code first in `msg`, when the daemon refuses it."""

    def __init__(self, argument_spec, **kwargs):
        spec = connection_argument_spec()
        spec.update(argument_spec)
        self.module = AnsibleModule(argument_spec=spec, **kwargs)
        self.params = self.module.params
        if not HAS_IMPRINT:
            self.module.fail_json(
                msg=missing_required_lib('imprint_client', url=CLIENT_URL),
                exception=IMPRINT_IMPORT_ERROR)
        try:
            self.client = Client(endpoint=self.params['endpoint'],
                                 token=self.params['token'],
                                 ca=self.params['ca_file'])
        except ImprintError as e:
            self.fail(e)
        except (OSError, ValueError) as e:
            self.module.fail_json(msg='cannot set up the client of %s: %s'
                                  % (self.params['endpoint'] or 'the default endpoint', e))

    @property
    def check_mode(self):
        return self.module.check_mode

    def to_dict(self, msg):
        return None if msg is None else Client.to_dict(msg)

    def fail(self, err, **extra):
        """Fail the task with a client error: `CODE: details`, the code
        again in `code`, and the failed operation when there is one."""
        op = getattr(err, 'operation', None)
        if op is not None:
            extra.setdefault('operation', self.to_dict(op))
        self.module.fail_json(msg=str(err), code=error_code(err), **extra)

    def call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ImprintError as e:
            self.fail(e)

    def wait(self, op, timeout):
        """The operation's final state; fails the task if it failed or
        did not end within `timeout` seconds (it goes on in the daemon)."""
        try:
            return self.client.wait(op, timeout=timeout)
        except ImprintError as e:
            self.fail(e)
        except TimeoutError:
            self.module.fail_json(
                msg='DEADLINE_EXCEEDED: operation %s (%s) did not end within %d s; it goes on '
                    'in the daemon: run the task again (or raise wait_timeout) to wait for it'
                    % (op.id, op.kind, timeout),
                code='DEADLINE_EXCEEDED', operation=self.to_dict(op))

    def get_image_or_none(self, image_id):
        """The image, or None when the daemon answers NOT_FOUND."""
        try:
            return self.client.get_image(image_id)
        except ImprintError as e:
            if error_code(e) == 'NOT_FOUND':
                return None
            self.fail(e)

    def images_named(self, name, owner=None):
        """Every image visible to the caller named exactly `name` (of
        `owner` when given), deprecated ones included, newest first."""
        found = []
        # The listing hides deprecated images unless asked for them.
        for state in (None, 'deprecated'):
            for img in self.call(self.client.list_images, owner=owner or '',
                                 name_prefix=name, state=state):
                if img.name == name and all(img.id != f.id for f in found):
                    found.append(img)
        found.sort(key=lambda i: i.created_unix, reverse=True)
        return found

    def one_owner(self, images, name, owner_option):
        """`images` of one account: the caller's own when it provably has
        some (private ones, ones with share members), else all of them;
        fails when they belong to several accounts."""
        pool = [i for i in images if provably_own(i)] or images
        owners = sorted(set(i.owner for i in pool))
        if len(owners) > 1:
            self.module.fail_json(
                msg='FAILED_PRECONDITION: images named %s of several accounts (%s) are visible; '
                    'set %s, or give an image id' % (name, ', '.join(owners), owner_option),
                code='FAILED_PRECONDITION')
        return pool

    def live_images_named(self, name, owner=None):
        """`images_named` without failed, deleting and deleted images."""
        return [i for i in self.images_named(name, owner) if image_state(i) not in GONE_STATES]

    def wait_while_creating(self, img, timeout):
        """Poll an image until its capture (or import) ends."""
        deadline = time.time() + timeout
        while image_state(img) == 'creating':
            if time.time() > deadline:
                self.module.fail_json(
                    msg='DEADLINE_EXCEEDED: image %s (%s) is still being created after %d s; '
                        'run the task again (or raise wait_timeout) to wait for it'
                        % (img.name, img.id, timeout),
                    code='DEADLINE_EXCEEDED', image=self.to_dict(img))
            time.sleep(2)
            img = self.call(self.client.get_image, img.id)
        return img

    def exit(self, **result):
        self.module.exit_json(**result)
