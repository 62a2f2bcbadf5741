"""The ODConv reference (Li et al., ICLR 2022, official repository), restated for tests.

This restates the published reference module's semantics (`../shared/seed/`) so the
project's ODConv2d can be checked against it number for number: same parameter names,
creation order, init, temperature as a plain float, and the per-example grouped conv. It
is test-only; nothing in the package imports it.
"""

import torch
import torch.nn.functional as F
from torch import nn


class RefAttention(nn.Module):
    def __init__(self, in_planes, out_planes, kernel_size, groups=1, reduction=0.0625, kernel_num=4, min_channel=16):
        super().__init__()
        hidden = max(int(in_planes * reduction), min_channel)
        self.kernel_size, self.kernel_num, self.temperature = kernel_size, kernel_num, 1.0
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(in_planes, hidden, 1, bias=False)
        self.bn = nn.BatchNorm2d(hidden)
        self.relu = nn.ReLU(inplace=True)
        self.channel_fc = nn.Conv2d(hidden, in_planes, 1, bias=True)
        self.has_filter = not (in_planes == groups and in_planes == out_planes)
        if self.has_filter:
            self.filter_fc = nn.Conv2d(hidden, out_planes, 1, bias=True)
        self.has_spatial = kernel_size != 1
        if self.has_spatial:
            self.spatial_fc = nn.Conv2d(hidden, kernel_size * kernel_size, 1, bias=True)
        self.has_kernel = kernel_num != 1
        if self.has_kernel:
            self.kernel_fc = nn.Conv2d(hidden, kernel_num, 1, bias=True)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            if isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x):
        b = x.size(0)
        x = self.relu(self.bn(self.fc(self.avgpool(x))))
        t = self.temperature
        ca = torch.sigmoid(self.channel_fc(x).view(b, -1, 1, 1) / t)
        fa = torch.sigmoid(self.filter_fc(x).view(b, -1, 1, 1) / t) if self.has_filter else 1.0
        sa = (torch.sigmoid(self.spatial_fc(x).view(b, 1, 1, 1, self.kernel_size, self.kernel_size) / t)
              if self.has_spatial else 1.0)
        ka = F.softmax(self.kernel_fc(x).view(b, -1, 1, 1, 1, 1) / t, dim=1) if self.has_kernel else 1.0
        return ca, fa, sa, ka


class RefODConv2d(nn.Module):
    def __init__(self, in_planes, out_planes, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 reduction=0.0625, kernel_num=4):
        super().__init__()
        self.in_planes, self.out_planes, self.kernel_size = in_planes, out_planes, kernel_size
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.groups, self.kernel_num = groups, kernel_num
        self.attention = RefAttention(in_planes, out_planes, kernel_size, groups=groups, reduction=reduction,
                                      kernel_num=kernel_num)
        self.weight = nn.Parameter(torch.randn(kernel_num, out_planes, in_planes // groups, kernel_size, kernel_size))
        for i in range(kernel_num):
            nn.init.kaiming_normal_(self.weight[i], mode="fan_out", nonlinearity="relu")

    def update_temperature(self, t):
        self.attention.temperature = t

    def forward(self, x):
        ca, fa, sa, ka = self.attention(x)
        if self.kernel_size == 1 and self.kernel_num == 1:
            out = F.conv2d(x * ca, self.weight.squeeze(0), None, self.stride, self.padding, self.dilation, self.groups)
            return out * fa
        b, c, h, w = x.size()
        x = (x * ca).reshape(1, -1, h, w)
        agg = torch.sum(sa * ka * self.weight.unsqueeze(0), dim=1)
        agg = agg.view(-1, self.in_planes // self.groups, self.kernel_size, self.kernel_size)
        out = F.conv2d(x, agg, None, self.stride, self.padding, self.dilation, self.groups * b)
        out = out.view(b, self.out_planes, out.size(-2), out.size(-1))
        return out * fa
